"""The pipeline's stages, registered by explicit import: a new stage is one module in this
package plus one line below (docs/architecture.md). `REGISTRY` is in pipeline order."""
from lis_jax.context import RunContext
from lis_jax.stages.base import Stage
from lis_jax.stages import paired_data
from lis_jax.stages import link
from lis_jax.stages import sweep
from lis_jax.stages import counterfactual
from lis_jax.stages import quantify
from lis_jax.stages import boundary
from lis_jax.stages import population
from lis_jax.stages import invariances
from lis_jax.stages import motion
from lis_jax.stages import photos
from lis_jax.stages import report

REGISTRY: dict[str, Stage] = {m.STAGE.name: m.STAGE for m in (
    paired_data, link, sweep, counterfactual, quantify, boundary, population,
    invariances, motion, photos, report)}

# Stage names of earlier layouts -> their names now (the runner refuses the old names).
RENAMED = {"fit_link": "link"}


def default_sections():
  """{stage name: its default_config()} as one ConfigDict: every section at the paper's
  setting (configs/linear.py starts from it, so `--config.<stage>.<field>=` works for all)."""
  import ml_collections
  return ml_collections.ConfigDict({name: st.default_config() for name, st in REGISTRY.items()})


def context(config, workdir: str) -> RunContext:
  """The run context of the registered stages over `workdir` (config sections merged over
  their defaults; values not yet validated: `ctx.validate(names)`)."""
  return RunContext(config, workdir, REGISTRY)
