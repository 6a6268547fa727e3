import sys

from robustdistill.cli import main

sys.exit(main())
