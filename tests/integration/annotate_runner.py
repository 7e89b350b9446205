"""Serves the annotation app over the preference store at URL on 127.0.0.1:PORT, as `lifecycle annotate`
does (create_app + run_server). Used by tests/integration/test_annotate_durability.py:
`python tests/integration/annotate_runner.py URL PORT`."""

import sys

from lifecycle.preferences.app import create_app, run_server
from lifecycle.preferences.store import PreferenceStore
from tests.annotate_fixtures import annotate_config

if __name__ == "__main__":
    url, port = sys.argv[1], int(sys.argv[2])
    run_server(create_app(PreferenceStore.open(url), annotate_config(store_url=url, port=port)), "127.0.0.1", port)
