"""The contracts between the parts: the event schema (``events``), the feature views and windows
(``features``), the offline history (``history``) and the model/bundle file layout
(``artifacts``).  Each is declared once here; everything else derives from it."""
