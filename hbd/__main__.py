import sys

from hbd.cli import main

sys.exit(main())
