import sys

from offline_chunk.cli import main

sys.exit(main())
