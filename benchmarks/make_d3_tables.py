"""Write mlip/assets/d3-reference.npz, the DFT-D3 reference tables of `mlip.nn.dispersion`.

Source: the tad-dftd3 0.7.0 and tad-mctc 0.11.3 wheels from PyPI (both Apache-2.0, the licence
of mlip; the data are Grimme's DFT-D3 reference values, as in s-dftd3): reference C6
coefficients and coordination numbers of elements 1-103 (tad_dftd3/reference-c6.pt,
tad_dftd3/reference.py), <r4>/<r2> expectation values (tad_dftd3/data/r4r2.py) and the D3
covalent radii (tad_mctc/data/radii.py, Pyykkö & Atsumi 2009, metals -10%). Read without torch:
the .pt file is a zip holding one raw float64 storage [104, 104, 7, 7].

    pip download --no-deps tad-dftd3==0.7.0 tad-mctc==0.11.3 -d wheels/
    python benchmarks/make_d3_tables.py wheels/tad_dftd3-0.7.0-py3-none-any.whl \
        wheels/tad_mctc-0.11.3-py3-none-any.whl

Stored compactly: only the references that exist (ref_cn >= 0), as one symmetric
[n_refs, n_refs] matrix over all references of all elements (upper triangle, float64).
"""

import ast
import re
import sys
import zipfile
from pathlib import Path

import numpy as np


def _list_literal(source: str, name: str) -> list:
    """The Python list literal assigned to ``name`` (or the first list after ``name``)."""
    start = source.index(name)
    start = source.index("[", start)
    depth, end = 0, start
    for end, char in enumerate(source[start:], start):
        depth += char == "["
        depth -= char == "]"
        if depth == 0:
            break
    text = re.sub(r"#[^\n]*", "", source[start : end + 1])
    return ast.literal_eval(text)


def main(tad_dftd3_wheel: str, tad_mctc_wheel: str, output: str) -> None:
    with zipfile.ZipFile(tad_dftd3_wheel) as wheel:
        with zipfile.ZipFile(wheel.open("tad_dftd3/reference-c6.pt")) as pt:
            c6 = np.frombuffer(pt.read("archive/data/0"), dtype="<f8").reshape(104, 104, 7, 7)
        reference = wheel.read("tad_dftd3/reference.py").decode()
        r4r2_source = wheel.read("tad_dftd3/data/r4r2.py").decode()
    with zipfile.ZipFile(tad_mctc_wheel) as wheel:
        radii = wheel.read("tad_mctc/data/radii.py").decode()
    ref_cn = np.array(_list_literal(reference, "return torch.tensor("), dtype=np.float64)
    r4_over_r2 = np.array(_list_literal(r4r2_source, "_r4_over_r2 ="), dtype=np.float64)
    cov_2009 = np.array(_list_literal(radii, "_COV_2009 ="), dtype=np.float64)
    assert ref_cn.shape == (104, 7) and r4_over_r2.shape[0] >= 104 and cov_2009.shape[0] >= 104
    assert np.allclose(c6, c6.transpose(1, 0, 3, 2)), "C6 table not symmetric"
    element, index = np.nonzero(ref_cn >= 0)  # every existing reference, element-major
    table = c6[element[:, None], element[None, :], index[:, None], index[None, :]]
    upper = np.triu_indices(len(element))
    np.savez_compressed(
        output,
        ref_element=element.astype(np.int16),
        ref_cn=ref_cn[element, index],
        c6_upper=table[upper],
        r4_over_r2=r4_over_r2[:104],
        covalent_radius_2009=cov_2009[:104],
    )
    print(f"{output}: {len(element)} references of {element.max()} elements, {Path(output).stat().st_size} bytes")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "mlip/assets/d3-reference.npz")
