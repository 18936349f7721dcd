"""Materials workflows on top of a potential: Hessians, equations of state, elastic constants.

One idea a module: `hessian` (autodiff second derivatives), `eos` (Birch-Murnaghan fits),
`elastic` (strain-stress fits of Cij and their Voigt-Reuss-Hill averages), `deform` (the
strained copies and the relaxations both fits share). Units inside: Å, eV, eV/Å^3.
"""
