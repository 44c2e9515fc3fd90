"""A one-line caption and an alt text for the figures a lesson shows.

``ALT_TEXT[name]`` is a dict with ``"caption"`` (one line, under the figure)
and ``"alt"`` (for readers who cannot see it: what is drawn and what to
notice), keyed by the ``plot_*`` function's name. The texts describe the
figure's kind and how to read it, not one dataset's numbers: a notebook adds
those (e.g. ``f"{ALT_TEXT['plot_bland_altman']['alt']} Bias {bias:.1f}..."``).
"""

from __future__ import annotations

__all__ = ["ALT_TEXT"]

ALT_TEXT = {
    "plot_permutation_null": {
        "caption": "The interaction statistic under 5000 Freedman-Lane permutations (grey), "
                   "those at least as extreme as the observed value (orange) and the "
                   "observed value (black line); p counts the orange bars.",
        "alt": "Histogram of the permutation null distribution of the arm by ΔMD interaction "
               "statistic, roughly bell-shaped and centred on zero. A solid black vertical "
               "line marks the observed statistic and a dashed one its mirror image; the "
               "permutations beyond either line are shaded orange. The legend gives the "
               "permutation p as one plus the number of orange permutations, over one plus "
               "the number of permutations.",
    },
    "plot_paired_md": {
        "caption": "Regional MD at the two visits: one line per participant, the arm's mean "
                   "in bold; the spread between people dwarfs the change within one.",
        "alt": "Two panels, ketamine (orange) and saline (blue), each with MD in 10⁻³ mm²/s "
               "on the vertical axis at the pre and 24 h post visits. Thin lines join each "
               "participant's two values; they are nearly flat and spread over a range many "
               "times larger than their slopes. A bold line shows each arm's mean, with the "
               "mean change in 10⁻⁶ mm²/s in the legend.",
    },
    "plot_bland_altman": {
        "caption": "Bland-Altman plot of the saline arm's two visits: the bias and the 95 % "
                   "limits of agreement are the measurement error a single ΔMD carries.",
        "alt": "Scatter plot, one point per saline participant: horizontal axis the mean MD of "
               "the two visits (10⁻³ mm²/s), vertical axis the difference post minus pre "
               "(10⁻⁶ mm²/s). A solid horizontal line marks the mean difference (bias) near "
               "zero and two dashed lines the limits of agreement, bias plus and minus 1.96 "
               "standard deviations; their values are in the legend. The points scatter "
               "evenly between the limits with no trend along the horizontal axis.",
    },
    "plot_colour_fa": {
        "caption": "Colour FA: the direction of fastest diffusion coloured red (left-right), "
                   "green (front-back) and blue (up-down), brightness = FA.",
        "alt": "Sagittal, coronal and axial slices of one participant's brain on black, "
               "coloured by the direction of the diffusion tensor's principal eigenvector: "
               "red for left-right, green for anterior-posterior, blue for superior-inferior, "
               "brighter where FA is higher. White matter tracts stand out in bright colours, "
               "grey matter and CSF are dark. An orientation key on the right names the "
               "three colours.",
    },
    "plot_atlas_maps": {
        "caption": "The seven study regions: Harvard-Oxford probability maps on the MNI "
                   "template, shaded by probability and outlined where it reaches 25 %.",
        "alt": "Sagittal slices of the MNI152 template on black at x = -26, -4, 4 and 26 mm. "
               "Coloured patches show the atlas probability of each study region: the frontal "
               "pole (BA10) at the front, amygdala and hippocampus in the medial temporal "
               "lobe, and the subcallosal cortex (vACC) below the front of the corpus "
               "callosum near the midline. Left regions are outlined with solid lines, right "
               "ones with dashed lines; the legend names the seven regions in their colours.",
    },
    "plot_forest": {
        "caption": "Arm × ΔMD interaction per region: the ketamine slope minus the saline "
                   "slope with its 95 % interval; filled diamonds pass the FDR correction.",
        "alt": "Forest plot with one row per region. A diamond marks the difference between "
               "the ketamine and saline slopes of score change on ΔMD, with a horizontal "
               "95 % confidence interval; a dashed vertical line marks zero, no difference "
               "between arms. The corrected q value of each row is written on the right; "
               "filled diamonds are rows with q below 0.05.",
    },
    "plot_power": {
        "caption": "Share of simulated trials in which the interaction reaches p < 0.05, per "
                   "region, with its Monte-Carlo 95 % interval.",
        "alt": "Horizontal bar chart with one bar per region: the share of simulated trials "
               "whose interaction test reached p below 0.05, from 0 to 1, with an error bar "
               "for the Monte-Carlo interval. Bars are shaded by what the share is: power "
               "where an interaction was planted, the false positive rate where nothing was, "
               "and a rejection rate where the same relation was planted in both arms. A "
               "dotted line marks 0.05 and a dashed line the usual target power of 0.8.",
    },
    "plot_registration_shift": {
        "caption": "What a registration error does: the change in each region's MD when the "
                   "regions are moved on purpose by a few millimetres.",
        "alt": "Line plot: horizontal axis the shift of the regions in mm, vertical axis the "
               "change in regional MD in percent from the unshifted regions. One line per "
               "region in the region palette, left regions solid and right regions dashed; "
               "lines fan out from zero as the shift grows, most for small regions next to "
               "CSF such as the amygdala and hippocampus.",
    },
}
