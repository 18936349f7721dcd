"""Batched molecular dynamics: velocity Verlet (NVE), Langevin (BAOAB) and a Nose-Hoover chain
(NVT), and Langevin with a stochastic cell-rescaling barostat, isotropic or anisotropic (NPT), each
an mlip.sim.engine.Dynamics (init, step, refresh) over `MDState`. Which ASE integrator matches
each, with which parameters: mlip.sim.ensembles.

Constraints: components fixed by FixAtoms / FixCartesian (System.free) get no force, no
thermostat noise and zero initial velocity, so they stay put; the temperature counts the free
components only (ASE's Atoms.get_temperature).

Units: Å, fs, amu, eV, K; velocities in Å/fs; stress and pressure in eV/Å^3 (ASE sign for
stress: positive = tensile). Every structure has its own target temperature, thermostat chain
and random key, so a structure follows the same trajectory alone or in any batch.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from ase import units

from mlip.potential import PotentialOutput
from mlip.sim import frechet
from mlip.sim.engine import Dynamics, drift, kick
from mlip.sim.neighbors import NeighborSpec
from mlip.sim.system import ATOM, GRAPH, System, moved

#: Å/fs^2 per (eV/Å)/amu: ASE's time unit is Å sqrt(amu/eV) = 1/units.fs fs.
ACCELERATION = units.fs**2
#: Nose-Hoover chain length.
CHAIN = 3


class MDState(NamedTuple):
    """MD state of a padded batch (N atom, G structure slots).

    system: structures (positions Å, cells Å, neighbour list).
    energy: [G] potential energy, eV. forces: [N, 3] eV/Å. stress: [G, 3, 3] eV/Å^3 (static,
        from the potential; zero where not 3-d periodic).
    velocities: [N, 3] Å/fs. kinetic_energy: [G] eV.
    temperature: [G] K, target. pressure: [G] eV/Å^3, target (NPT).
    key: uint32 [G, 2], per-structure random key (Langevin, barostat).
    chain_positions: [G, CHAIN] (dimensionless) and chain_velocities: [G, CHAIN] 1/fs, the
        Nose-Hoover chain. bath_energy: [G] eV, energy taken out by the thermostat/barostat,
        so that energy + kinetic_energy + bath_energy is conserved (up to integration error).
    steps: int32 [G], steps taken.
    """

    system: System
    energy: jax.Array
    forces: jax.Array
    stress: jax.Array
    velocities: jax.Array
    kinetic_energy: jax.Array
    temperature: jax.Array
    pressure: jax.Array
    key: jax.Array
    chain_positions: jax.Array
    chain_velocities: jax.Array
    bath_energy: jax.Array
    steps: jax.Array

    KINDS = {
        "energy": GRAPH, "forces": ATOM, "stress": GRAPH, "velocities": ATOM, "kinetic_energy": GRAPH,
        "temperature": GRAPH, "pressure": GRAPH, "key": GRAPH, "chain_positions": GRAPH,
        "chain_velocities": GRAPH, "bath_energy": GRAPH, "steps": GRAPH,
    }

    @property
    def conserved(self):
        """[G] eV: potential + kinetic + bath energy."""
        return self.energy + self.kinetic_energy + self.bath_energy


def kinetic_energy(velocities, system: System):
    """[G] eV from velocities [N, 3] in Å/fs."""
    per_atom = 0.5 * system.masses * jnp.sum(velocities**2, axis=1) / ACCELERATION
    per_atom = jnp.where(system.node_mask, per_atom, 0.0)
    return jax.ops.segment_sum(per_atom, system.node_graph, system.cell.shape[0])


def degrees_of_freedom(system: System):
    """[G]: the free Cartesian components, 3 n without constraints (ASE's
    Atoms.get_temperature convention), at least 1."""
    free = jax.ops.segment_sum(jnp.sum(system.free, axis=1), system.node_graph, system.cell.shape[0])
    return jnp.maximum(free, 1).astype(system.positions.dtype)


def instantaneous_temperature(state: MDState):
    """[G] K."""
    return 2 * state.kinetic_energy / (degrees_of_freedom(state.system) * units.kB)


def _driver(energy_fn, spec, dt):
    """The pieces every integrator shares: refresh, half kick, drift."""

    def refresh(state: MDState) -> MDState:
        out = energy_fn(state.system)
        return state._replace(
            energy=out.energy, forces=out.forces, stress=out.stress,
            kinetic_energy=kinetic_energy(state.velocities, state.system),
        )

    def half_kick(state: MDState, fraction: float) -> MDState:
        system = state.system
        acceleration = state.forces * system.free / system.masses[:, None] * ACCELERATION
        velocities = kick(state.velocities, jnp.where(system.node_mask[:, None], acceleration, 0.0), fraction * dt)
        return state._replace(velocities=velocities, kinetic_energy=kinetic_energy(velocities, system))

    def move(state: MDState, fraction: float, update_neighbors: bool = True):
        positions = drift(state.system.positions, state.velocities, fraction * dt)
        if not update_neighbors:
            return state._replace(system=state.system._replace(positions=positions))
        return state._replace(system=moved(state.system, positions, state.system.cell, spec))

    def init(system: System, velocities, temperature, pressure, key) -> MDState:
        n_graph, dtype = system.cell.shape[0], system.positions.dtype
        zeros = jnp.zeros(n_graph, dtype)
        state = MDState(
            system=system, energy=zeros, forces=jnp.zeros_like(system.positions),
            stress=jnp.zeros_like(system.cell), velocities=jnp.asarray(velocities, dtype) * system.free,
            kinetic_energy=zeros, temperature=jnp.asarray(temperature, dtype),
            pressure=jnp.asarray(pressure, dtype), key=jnp.asarray(key, jnp.uint32),
            chain_positions=jnp.zeros((n_graph, CHAIN), dtype),
            chain_velocities=jnp.zeros((n_graph, CHAIN), dtype), bath_energy=zeros,
            steps=jnp.zeros(n_graph, jnp.int32),
        )
        return refresh(state)

    return init, refresh, half_kick, move


def nve(energy_fn: Callable[[System], PotentialOutput], spec: NeighborSpec, *, timestep: float) -> Dynamics:
    """Velocity Verlet, ``timestep`` fs. init(system, velocities [N, 3] Å/fs, temperature
    [G] K, pressure [G] eV/Å^3, key uint32 [G, 2]) -> MDState; step(state) -> MDState."""
    init, refresh, kick, drift = _driver(energy_fn, spec, timestep)

    def step_fn(state: MDState) -> MDState:
        state = drift(kick(state, 0.5), 1.0)
        state = kick(refresh(state), 0.5)
        return state._replace(steps=state.steps + 1)

    return Dynamics(init, step_fn, refresh)


def langevin(energy_fn, spec: NeighborSpec, *, timestep: float, friction: float) -> Dynamics:
    """Langevin dynamics (BAOAB splitting), ``friction`` in 1/fs; same init as `nve`."""
    init, refresh, kick, drift = _driver(energy_fn, spec, timestep)

    def step_fn(state: MDState) -> MDState:
        state = drift(kick(state, 0.5), 0.5, update_neighbors=False)
        state = _ornstein_uhlenbeck(state, timestep, friction)
        state = kick(refresh(drift(state, 0.5)), 0.5)
        return state._replace(steps=state.steps + 1)

    return Dynamics(init, step_fn, refresh)


def _ornstein_uhlenbeck(state: MDState, dt: float, friction: float) -> MDState:
    """Exact velocity update v -> c v + sqrt((1 - c^2) kT/m) xi, c = exp(-friction dt)."""
    system = state.system
    keys = jax.vmap(jax.random.split)(state.key)  # [G, 2, 2]
    # Each atom's noise comes from its structure's key and its index within the structure,
    # so a structure draws the same numbers alone or in any batch.
    atom_keys = jax.vmap(jax.random.fold_in)(keys[system.node_graph, 1], _local_index(system))
    noise = jax.vmap(lambda k: jax.random.normal(k, (3,), state.velocities.dtype))(atom_keys)
    c = jnp.exp(-friction * dt)
    kT = units.kB * state.temperature[system.node_graph]
    sigma = jnp.sqrt((1 - c**2) * kT / system.masses) * units.fs
    velocities = c * state.velocities + jnp.where(system.node_mask, sigma, 0.0)[:, None] * noise * system.free
    before = state.kinetic_energy
    after = kinetic_energy(velocities, system)
    return state._replace(velocities=velocities, key=keys[:, 0], kinetic_energy=after,
                          bath_energy=state.bath_energy + before - after)


def _local_index(system: System):
    """int32 [N]: index of each atom within its structure."""
    return jnp.arange(system.positions.shape[0]) - system.graph_start[system.node_graph]


def nose_hoover_chain(energy_fn, spec: NeighborSpec, *, timestep: float, tau: float) -> Dynamics:
    """Nose-Hoover chain NVT (Martyna-Tuckerman-Klein, chain of `CHAIN`), relaxation time
    ``tau`` fs; Trotter splitting chain(dt/2) - velocity Verlet - chain(dt/2). Same init."""
    init, refresh, kick, drift = _driver(energy_fn, spec, timestep)

    def step_fn(state: MDState) -> MDState:
        state = _chain_half_step(state, timestep, tau)
        state = drift(kick(state, 0.5), 1.0)
        state = kick(refresh(state), 0.5)
        state = _chain_half_step(state, timestep, tau)
        return state._replace(steps=state.steps + 1)

    return Dynamics(init, step_fn, refresh)


def _chain_half_step(state: MDState, dt: float, tau: float) -> MDState:
    """Half a time step of the chain (velocity scaling of the atoms, chain update)."""
    dof = degrees_of_freedom(state.system)
    kT = units.kB * state.temperature
    masses = jnp.stack([dof * kT * tau**2] + [kT * tau**2] * (CHAIN - 1), axis=1)  # eV fs^2
    masses = jnp.where(masses > 0, masses, 1.0)
    xi, v = state.chain_positions, state.chain_velocities
    kinetic = state.kinetic_energy

    def force(j, v, kinetic):
        drive = 2 * kinetic - dof * kT if j == 0 else masses[:, j - 1] * v[:, j - 1] ** 2 - kT
        return drive / masses[:, j]

    def update(j, v, kinetic):  # one thermostat, damped by the next one around its kick
        damp = jnp.exp(-dt / 8 * v[:, j + 1]) if j < CHAIN - 1 else 1.0
        vj = (v[:, j] * damp + dt / 4 * force(j, v, kinetic)) * damp
        return v.at[:, j].set(vj)

    for j in reversed(range(CHAIN)):
        v = update(j, v, kinetic)
    scale = jnp.exp(-dt / 2 * v[:, 0])
    kinetic = kinetic * scale**2
    xi = xi + dt / 2 * v
    for j in range(CHAIN):
        v = update(j, v, kinetic)
    velocities = state.velocities * scale[state.system.node_graph][:, None]
    bath = jnp.sum(0.5 * masses * v**2, axis=1) + dof * kT * xi[:, 0] + kT * jnp.sum(xi[:, 1:], axis=1)
    return state._replace(velocities=velocities, kinetic_energy=kinetic, chain_positions=xi,
                          chain_velocities=v, bath_energy=bath)


def npt_langevin(energy_fn, spec: NeighborSpec, *, timestep: float, friction: float, tau_p: float,
                 compressibility: float, anisotropic: bool = False) -> Dynamics:
    """NPT: Langevin thermostat plus stochastic cell rescaling (Bernetti & Bussi, J. Chem. Phys.
    153, 114107 (2020)) of the volume towards the target pressure, and with ``anisotropic`` a
    weak (Berendsen-type) coupling of the cell shape to the deviatoric pressure. tau_p:
    barostat time, fs; compressibility: Å^3/eV (an estimate of the material's; it sets the
    coupling strength only). Structures not periodic in 3-d keep their cell. Same init as
    `nve`."""
    init, refresh, kick, drift = _driver(energy_fn, spec, timestep)

    def step_fn(state: MDState) -> MDState:
        state = drift(kick(state, 0.5), 0.5, update_neighbors=False)
        state = _ornstein_uhlenbeck(state, timestep, friction)
        state = drift(state, 0.5, update_neighbors=False)
        state = _rescale_cell(state, timestep, tau_p, compressibility, anisotropic)
        state = state._replace(system=moved(state.system, state.system.positions, state.system.cell, spec))
        state = kick(refresh(state), 0.5)
        return state._replace(steps=state.steps + 1)

    return Dynamics(init, step_fn, refresh)


def pressure_tensor(state: MDState):
    """[G, 3, 3] eV/Å^3: instantaneous pressure, kinetic (sum of m v v^T / V) minus stress."""
    system = state.system
    per_atom = system.masses[:, None, None] * state.velocities[:, :, None] * state.velocities[:, None, :]
    per_atom = jnp.where(system.node_mask[:, None, None], per_atom, 0.0) / ACCELERATION
    kinetic = jax.ops.segment_sum(per_atom, system.node_graph, system.cell.shape[0])
    volume = jnp.abs(jnp.linalg.det(system.cell))
    return kinetic / volume[:, None, None] - state.stress


def _rescale_cell(state: MDState, dt: float, tau_p: float, compressibility: float, anisotropic: bool) -> MDState:
    """One Euler-Maruyama step of the log-volume (stochastic cell rescaling), plus with
    ``anisotropic`` the traceless strain (dt compressibility / 3 tau_p) dev(P); positions and
    cell deform by exp(strain), velocities by its inverse (a symmetric strain: no rotation)."""
    system = state.system
    periodic = jnp.all(system.pbc, axis=1) & system.graph_mask
    volume = jnp.abs(jnp.linalg.det(system.cell))
    kT = units.kB * state.temperature
    tensor = pressure_tensor(state)
    pressure = jnp.trace(tensor, axis1=1, axis2=2) / 3
    keys = jax.vmap(jax.random.split)(state.key)
    noise = jax.vmap(lambda k: jax.random.normal(k, (), volume.dtype))(keys[:, 1])
    drift = -compressibility / tau_p * (state.pressure - pressure - kT / volume) * dt
    diffusion = jnp.sqrt(2 * kT * compressibility * dt / (volume * tau_p)) * noise
    eye = jnp.eye(3, dtype=volume.dtype)
    strain = ((drift + diffusion) / 3)[:, None, None] * eye
    if anisotropic:
        deviator = tensor - pressure[:, None, None] * eye
        strain = strain + compressibility * dt / (3 * tau_p) * 0.5 * (deviator + jnp.swapaxes(deviator, 1, 2))
    strain = jnp.where(periodic[:, None, None], strain, 0.0)
    deformation = frechet.expm(strain)  # symmetric
    graph = system.node_graph
    positions = jnp.einsum("ni,nij->nj", system.positions, deformation[graph])
    velocities = jnp.einsum("ni,nij->nj", state.velocities, jnp.linalg.inv(deformation)[graph])
    system = system._replace(positions=positions, cell=system.cell @ deformation)
    kinetic = kinetic_energy(velocities, system)
    new_volume = jnp.abs(jnp.linalg.det(system.cell))
    # The work of the barostat (p dV and the kinetic rescaling) goes into the bath.
    bath = state.bath_energy + state.kinetic_energy - kinetic + state.pressure * (new_volume - volume)
    return state._replace(system=system, velocities=velocities, kinetic_energy=kinetic, key=keys[:, 0],
                          bath_energy=bath)
