"""Test configuration shared by the whole suite: the hubs are unreachable, so never try them."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
