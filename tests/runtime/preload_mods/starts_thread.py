"""A module that starts a thread when imported: forking after it is unsafe."""

import threading

_stop = threading.Event()
threading.Thread(target=_stop.wait, daemon=True, name="started-at-import").start()
