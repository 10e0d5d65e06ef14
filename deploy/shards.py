"""``python -m deploy.shards``: the Procfile's ``shards`` line. The runner lives in
``shardhost.launcher``; this entry point stays so existing Procfiles and units keep working."""

import sys

from shardhost.launcher import main

if __name__ == "__main__":
    sys.exit(main())
