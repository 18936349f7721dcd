"""Knowledge distillation: build training data for a universal potential from a teacher.

    mlip.distill.chemistry    the MPtrj element set, oxidation states, element weights
    mlip.distill.prototypes   charge-balanced prototype crystals (rocksalt, perovskite, ...)
    mlip.distill.generate     seed structures: prototypes, random symmetric crystals, real frames
    mlip.distill.teachers     any ASE calculator as a teacher (SevenNet-0 by default)
    mlip.distill.label        teacher-driven relaxation, perturbations and MD; filters; shards

`mlip generate` and `mlip label` are the command-line faces (see the README, "Distillation").
"""
