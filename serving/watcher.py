"""The bundle watcher: a daemon thread that polls ``CURRENT`` and swaps off the request path."""
from __future__ import annotations

import logging
import threading

log = logging.getLogger("sassflow.serving")


class BundleWatcher:
    def __init__(self, service, interval_s: float):
        self.service = service
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bundle-watcher", daemon=True)

    def start(self) -> "BundleWatcher":
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        last_failure = None
        while not self._stop.is_set():
            try:
                self.service.check_pointer()
                last_failure = None
            except Exception as exc:  # a watcher that dies silently would freeze the service on one bundle
                failure = f"{type(exc).__name__}: {exc}"
                if failure != last_failure:  # once per distinct failure, not every tick
                    log.exception("bundle watcher tick failed")
                last_failure = failure
            self._stop.wait(self.interval_s)
