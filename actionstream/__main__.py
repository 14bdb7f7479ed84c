import sys

from actionstream.cli import main

# Guarded: `serve --workers` starts its workers with multiprocessing's spawn,
# which imports this module again in each of them.
if __name__ == "__main__":
    sys.exit(main())
