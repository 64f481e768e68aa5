"""`thinkrl pipeline`: the R1 stages from one YAML."""
