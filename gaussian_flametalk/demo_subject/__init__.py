"""The demo's built-in subject: the synthetic head with a procedural face that mediapipe detects, speaking espeak-ng
sentences (:mod:`.subject`), rendered by :mod:`.face`. For ``gft demo`` and the tests; nobody should mistake it for
a real person or for FLAME."""
