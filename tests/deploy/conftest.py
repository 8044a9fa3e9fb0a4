import sys
import pathlib

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
# the real-proxy harness (ProxyProcess, FaultUpstream, scrape) is shared with tests/proxy
sys.path.insert(0, str(HERE.parent / "proxy"))
