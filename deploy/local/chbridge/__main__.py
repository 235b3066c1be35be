import argparse
import logging
import os
import signal
import sys
import threading

from .engine import Engine
from .server import BridgeServer


def main() -> int:
    parser = argparse.ArgumentParser(prog="chbridge", description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:8123", help="host:port to serve on")
    parser.add_argument("--data-dir", required=True, help="where the engine keeps its data")
    parser.add_argument("--user", default=os.environ.get("CHBRIDGE_USER", "default"))
    parser.add_argument(
        "--password-file",
        help="file holding the password (kept off the command line); empty password if absent",
    )
    parser.add_argument("--max-concurrent-queries", type=int, default=64)
    parser.add_argument("--max-query-size", type=int, default=256 * 1024 * 1024,
                        help="largest non-insert request body, in bytes")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args()

    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(threadName)s %(message)s",
        stream=sys.stderr,
    )
    password = ""
    if args.password_file:
        with open(args.password_file) as f:
            password = f.read().strip()
    host, _, port = args.listen.rpartition(":")
    engine = Engine(args.data_dir)
    server = BridgeServer(
        (host, int(port)), engine, (args.user, password),
        args.max_concurrent_queries, args.max_query_size,
    )

    def stop(signum, _frame):
        logging.info("signal %d: finishing in-flight requests, then stopping", signum)
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    logging.info("ClickHouse %s engine on %s, serving http://%s", engine.version, args.data_dir,
                 args.listen)
    server.serve_forever(poll_interval=0.2)
    server.server_close()
    engine.close()
    logging.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
