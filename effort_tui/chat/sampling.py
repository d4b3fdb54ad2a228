"""How the open conversation samples, and how the user changes it (ctrl+g, the palette).

Values typed in the palette are checked by `engine.validation`, the same rules as the command
line's flags and the settings file's `[sampling]` table.
"""

from __future__ import annotations

from dataclasses import replace

from engine import validation
from engine.api import SamplingSettings
from engine.sampler import CHAT_DEFAULTS, overlay

# the values the palette can set, one by one
ASKABLE = ("temperature", "top_p", "min_p", "repetition_penalty", "top_k", "max_tokens")


class SamplingChoice:
    def __init__(self, configured: SamplingSettings) -> None:
        self.configured = configured  # config.toml's [sampling] (CHAT_DEFAULTS where it says nothing)
        self.defaults = configured  # the model's own defaults with the config's values over them
        self.current = configured  # this conversation's
        self._before_greedy: SamplingSettings | None = None  # what ctrl+g goes back to

    def model_ready(self, model_sampling: SamplingSettings | None, *, keep_current: bool) -> None:
        self.defaults = overlay(model_sampling or CHAT_DEFAULTS, self.configured)
        if not keep_current:
            self.current = self.defaults

    def sampled_defaults(self) -> SamplingSettings:
        """The defaults, unless they are greedy: then the chat's own."""
        return self.defaults if not self.defaults.greedy else CHAT_DEFAULTS

    def toggled_greedy(self) -> SamplingSettings:
        if self.current.greedy:
            return self._before_greedy or self.sampled_defaults()
        self._before_greedy = self.current
        return replace(self.current, temperature=0.0)

    @staticmethod
    def question(name: str) -> str:
        """e.g. 'top p (in (0, 1])'."""
        return f"{name.replace('_', ' ')} ({validation.SAMPLING_RULES[name].text()})"

    def with_value(self, name: str, text: str) -> SamplingSettings:
        """The current sampling with `name` set from what was typed; raises SettingError."""
        return replace(self.current, **{name: validation.check_sampling(name, text)})
