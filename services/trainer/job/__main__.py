"""`python -m textft_services.trainer.job`: what every launcher runs."""

import logging
import os
import sys

from .main import main

code = main()
# Everything is reported and uploaded: skip the interpreter's teardown (torch's
# and tokenizers' threads, finalisers of every loaded module), which the
# trainer waits for before the version is READY.
sys.stdout.flush()
sys.stderr.flush()
logging.shutdown()
os._exit(code)
