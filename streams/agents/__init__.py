"""faust agents: thin loops that decode, call the domain, persist and emit."""
