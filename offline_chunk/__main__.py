import sys

from offline_chunk.harness.cli import main

sys.exit(main())
