"""JSON body limits: depth, array and string length, key count, strict parsing."""
