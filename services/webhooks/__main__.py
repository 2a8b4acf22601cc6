from services.webhooks.main import main

raise SystemExit(main())
