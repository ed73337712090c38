"""The tools around the core: the ablation bench and its tables, the base model's ceiling, the speed benches,
the demo, the report page and the tiny models the tests build. A user's `import setseq` does not load them."""
