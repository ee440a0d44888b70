import sys

from hvadam_bench.cli import main

sys.exit(main())
