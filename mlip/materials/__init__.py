"""Materials workflows on top of a potential: Hessians, equations of state, elastic constants,
phonons.

One idea a module: `hessian` (autodiff second derivatives), `eos` (Birch-Murnaghan fits),
`elastic` (strain-stress fits of Cij and their Voigt-Reuss-Hill averages), `phonons` (phonopy,
an optional extra), `deform` (the strained copies and relaxations they share), `commands` (the
`mlip eos | elastic | phonons` subcommands). Units inside: Å, eV, eV/Å^3.
"""
