"""The embedded tiny SpatialEdit's world: seeded scenes rendered as (source, instruction, target)
pairs, the scoring of an edit against the truth, the training command, the weights trained here and
shipped as package data (`trained/`), and tiny model folders of seeded random weights for tests.
Only the faces (the CLI's demo and train-tiny, benches, examples, tests) use it."""
