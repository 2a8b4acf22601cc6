"""`python -m producer`: an alias of `imgqueue` (cli.main)."""

import sys

from cli.main import main

sys.exit(main())
