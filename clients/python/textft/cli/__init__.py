"""`textft`: the command line of the textft SDK.

Light on purpose (argparse + the SDK: grpcio and protobuf only). Every command
talks to the services through textft.Client; `--json` prints the protobuf
messages as JSON for scripts. Errors from the services are printed as
`error: CODE: message` (plus field violations) with exit status 1.

One module per command group, each adding its own subcommands (`register`):
stack (`up`), datasets, models (templates, models, train, watch, cancel, status,
evaluate, plot), predict, access (whoami, keys, audit); main assembles them.

    textft up                                    # the local stack (needs the services distribution)
    textft datasets create reviews
    textft datasets upload reviews reviews.csv --task classification
    textft models create sentiment --task classification
    textft train sentiment datasets/reviews/versions/v1 --template gpt-neo-125m-lora-text-classification
    textft predict sentiment "what a great film"
    textft plot models/sentiment/versions/v1 --out plots/   # loss and ROC curves (PNG; needs textft[plots])
"""

from .args import CONFIG_SECTIONS, UsageError, apply_set
from .main import build_parser, main
from .runs import RunRenderer

__all__ = ["CONFIG_SECTIONS", "RunRenderer", "UsageError", "apply_set", "build_parser", "main"]
