"""Query parameter limits: bounds on page sizes and counts, parameter count and value length."""
