import sys

from e2echat.cli import main

sys.exit(main())
