"""The explorer base class, the shared region state and small display helpers.

As in mpl-interactions' ``controller.py``, the state (the controls) is held
apart from the drawing (a :class:`ketamine_nb.plotting.FigureHandle`, built
once and updated in place), from the table behind it and from the layout.
"""

from __future__ import annotations

import html
import io

import ipywidgets as widgets
import pandas as pd
import traitlets

from ..exceptions import InputError
from ._controls import in_kernel

__all__ = ["Explorer", "RegionState"]

class RegionState(traitlets.HasTraits):
    """One region shared by several explorers (and, later, a 3D viewer).

    Pass the same object as ``region_state=`` to several explorers: picking
    a region in one moves the others. Anything with traitlets can follow it
    too (``traitlets.link((state, "region"), (viewer, "region"))``).

    Parameters
    ----------
    regions : sequence of str
        The regions that may be picked (e.g. ``Results.regions``).
    region : str, optional
        The region picked first (default: the first).

    Attributes
    ----------
    region : str
        The region picked now (a traitlet: ``state.observe(f, "region")``).
    regions : tuple of str
        The allowed values.
    """

    region = traitlets.Unicode()
    regions = traitlets.Tuple()

    def __init__(self, regions, region=None):
        regions = tuple(str(r) for r in regions)
        if not regions:
            raise InputError("a region state needs at least one region")
        super().__init__(regions=regions, region=str(region or regions[0]))

    @traitlets.validate("region")
    def _valid(self, proposal):
        if proposal["value"] not in self.regions:
            raise traitlets.TraitError(f"region {proposal['value']!r} is not one of "
                                       f"{', '.join(self.regions)}")
        return proposal["value"]


class Explorer(widgets.VBox):
    """Controls, one figure updated in place, and the table behind it.

    Subclasses (one per explorer) make ``self.controls`` and ``self.handle``
    (a :class:`ketamine_nb.plotting.FigureHandle`) and define three small
    methods: :meth:`draw` (values -> table; calls plain functions and
    ``self.handle.update``), :meth:`describe` (table -> HTML) and, when a
    control constrains another, :meth:`adjust`.

    Parameters
    ----------
    controls : dict of str -> ipywidgets.ValueWidget
        The controls, by name.
    handle : ketamine_nb.plotting.FigureHandle
        The figure, built once.
    title : str, optional
        A heading above the controls.
    name : str, default="explorer"
        Added as the CSS class ``ketamine-nb-<name>`` (the browser test's handle).
    columns : int, default=3
        Controls per row.
    dpi : int, default=80
        Resolution of the figure in the notebook.
    region_state : RegionState, optional
        A region shared with other explorers: the ``region`` control follows
        it and moves it.

    Attributes
    ----------
    controls, handle : as above
    figure : matplotlib.figure.Figure
        ``handle.figure``.
    artists : dict
        ``handle.artists``: the artists the updates change (what the tests count).
    table : pandas.DataFrame
        What is shown now.
    output : ipywidgets.Output
        Where the figure is displayed in a notebook.
    table_view : ipywidgets.HTML
        The table as shown under the figure (units in the headers).
    message : ipywidgets.HTML
        Why a choice cannot be shown (empty otherwise); the figure and the
        table then keep the last choice that could be shown.
    """

    def __init__(self, controls: dict, handle, *, title: str = "", name: str = "explorer",
                 columns: int = 3, dpi: int = 80, region_state: RegionState | None = None):
        self.controls = dict(controls)
        self.handle = handle
        self.table = pd.DataFrame()
        self.dpi = dpi
        self.output = widgets.Output(layout=widgets.Layout(min_height="120px"))
        self.message = widgets.HTML()
        self.table_view = widgets.HTML()
        self._busy = False
        grid = widgets.GridBox(
            list(self.controls.values()),
            layout=widgets.Layout(grid_template_columns=f"repeat({columns}, minmax(0, 1fr))",
                                  grid_gap="2px 16px", width="100%"))
        head = [widgets.HTML(f"<b>{html.escape(title)}</b>")] if title else []
        super().__init__([*head, grid, self.message, self.output, self.table_view])
        self.add_class("ketamine-nb-explorer")
        self.add_class(f"ketamine-nb-{name}")
        self.output.add_class("ketamine-nb-figure")
        self.table_view.add_class("ketamine-nb-table")
        for c in self.controls.values():
            c.observe(self._on_change, names="value")
        self.region_state = None
        if region_state is not None:
            self.link_region(region_state)
        self.update()

    # -- state -------------------------------------------------------------

    @property
    def figure(self):
        """The figure (made once)."""
        return self.handle.figure

    @property
    def artists(self) -> dict:
        """The artists the updates change, by name."""
        return self.handle.artists

    @property
    def values(self) -> dict:
        """The controls' current values, by name."""
        return {k: c.value for k, c in self.controls.items()}

    def link_region(self, state: RegionState) -> None:
        """Make the ``region`` control follow ``state`` and move it."""
        control = self.controls["region"]
        self.region_state = state

        def to_control(change):
            if change["new"] in _option_values(control):
                control.value = change["new"]

        def to_state(change):
            if change["new"] in state.regions and state.region != change["new"]:
                state.region = change["new"]

        state.observe(to_control, names="region")
        control.observe(to_state, names="value")
        to_control({"new": state.region})

    def _on_change(self, change):
        if self._busy:
            return
        self._busy = True
        try:
            self.adjust(change)
        finally:
            self._busy = False
        self.update()

    # -- to override ---------------------------------------------------------

    def adjust(self, change) -> None:
        """Adjust other controls when one changes (e.g. the sessions of a subject)."""

    def draw(self, values: dict) -> pd.DataFrame:  # pragma: no cover - overridden
        """Update the figure for the controls' values; return the table."""
        raise NotImplementedError

    def describe(self, table: pd.DataFrame) -> str:
        """Return the HTML shown under the figure."""
        return table.to_html(index=False)

    # -- drawing -------------------------------------------------------------

    def update(self):
        """Redraw for the controls' current values (called on every change)."""
        try:
            table = self.draw(self.values)
        except InputError as err:
            self.message.value = ("<span style='color:#b00'>Cannot show this choice: "
                                  f"{html.escape(str(err))}</span>")
            return
        self.message.value = ""
        self.table = table
        self.table_view.value = self.describe(table)
        self.redisplay()

    def png(self) -> bytes:
        """Render the figure as PNG bytes (what the notebook shows)."""
        buf = io.BytesIO()
        self.figure.savefig(buf, format="png", dpi=self.dpi)
        return buf.getvalue()

    def redisplay(self):
        """Show the figure again in the output area (in a Jupyter kernel only)."""
        if not in_kernel():
            return
        from IPython.display import Image, clear_output, display

        data = self.png()
        with self.output:
            clear_output(wait=True)
            display(Image(data=data, format="png"))


def _option_values(control) -> list:
    return [o[1] if isinstance(o, tuple) else o for o in control.options]
