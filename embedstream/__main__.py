"""`python -m embedstream` runs the CLI."""

import sys

from embedstream.cli import main

sys.exit(main())
