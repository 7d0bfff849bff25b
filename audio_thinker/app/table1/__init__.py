"""The paper's Table 1 as commands: `ablate` trains and evaluates its rows, `report` tabulates finished runs."""
