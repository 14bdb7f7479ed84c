import sys

from actionstream.cli import main

sys.exit(main())
