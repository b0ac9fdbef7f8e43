"""The flags of the front doors. As in Sony's repository, the parsers are in an `args.py`: the
package's `unmix_nnabla/cli/args.py`, which the scripts and the console commands parse with;
this script prints them.

    python args.py              the flags of train.py, test.py, eval.py, data.py, convert.py
    python args.py train eval   those of train.py and eval.py
"""
import sys

from unmix_nnabla.cli.args import print_flags

if __name__ == "__main__":
    sys.exit(print_flags())
