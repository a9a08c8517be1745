"""The bundled kernel as `validate` uses it: ``check`` runs it on a config's masks against an fp32 reference,
``bench`` times it against dense cuDNN attention on a GPU (also the benchmarks' timer)."""
