"""Registers ``hydra/launcher=population``: Hydra takes launchers only from the ``hydra_plugins``
namespace, so the class lives here by name; its code is ``gan.population.launcher``."""

from dataclasses import dataclass

from hydra.core.config_store import ConfigStore

from gan.population import enrollment, launcher


class PopulationLauncher(launcher.PopulationLauncher):
    """See ``gan.population.launcher``."""


@dataclass
class PopulationLauncherConf(launcher.PopulationLauncherConf):
    _target_: str = enrollment.TARGET


ConfigStore.instance().store(
    group="hydra/launcher", name="population", node=PopulationLauncherConf, provider="gan-init"
)
