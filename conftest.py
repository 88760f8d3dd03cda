"""Root pytest configuration: applies to the notebooks (nbval) as well as tests/.

nbval waits only 5 seconds (hard-coded, no option) for each output message of a finished
cell. With two xdist workers and a notebook kernel training a model on two cores, a message
can take longer than that to arrive, and a correct notebook fails with "Timeout of 5 seconds
exceeded waiting for output". Cell execution keeps nbval's own timeout; only this wait grows.
"""

NBVAL_OUTPUT_TIMEOUT_SECONDS = 120


def pytest_collection_modifyitems(items):
    for item in items:
        if hasattr(item, "output_timeout"):  # nbval's notebook cells
            item.output_timeout = NBVAL_OUTPUT_TIMEOUT_SECONDS
