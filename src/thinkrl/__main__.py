"""`python -m thinkrl`: the same command line as the `thinkrl` script."""

import sys

from thinkrl.cli.main import main

sys.exit(main())
