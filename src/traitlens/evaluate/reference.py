"""The neutral reference text whose perplexity measures what an intervention costs.

Written for traitlens: plain encyclopedic prose about a physical process, with
no speaker, no opinions and no social content, so that a change in its
perplexity reflects damage to general language modelling rather than a shift in
persona. Kept as a constant (not a data file) so it ships with the code.
"""

from __future__ import annotations

NEUTRAL_TEXT = (
    "Water moves continuously between the oceans, the atmosphere and the land in a process "
    "known as the water cycle. Energy from the sun warms the surface of seas, lakes and rivers, "
    "and part of that water evaporates into the air as vapour. Plants add more vapour through "
    "small pores in their leaves, a process called transpiration. As warm, moist air rises, it "
    "expands and cools, and the vapour condenses around tiny particles of dust or salt to form "
    "the droplets that make up clouds. When the droplets grow large enough, they fall as rain, "
    "or as snow and hail when the air is cold enough.\n\n"
    "Precipitation that reaches the ground follows several paths. Some of it flows over the "
    "surface into streams and rivers, which carry it back to the sea. Some soaks into the soil "
    "and moves slowly downward until it reaches a layer of rock or sediment that is already "
    "saturated. This stored water, called groundwater, can remain underground for days or for "
    "thousands of years, depending on the depth and the type of rock. Springs form where "
    "groundwater meets the surface, and wells draw on it for drinking water and farming.\n\n"
    "In cold regions, snow can accumulate over many seasons and compress into glacial ice. "
    "Glaciers and ice sheets hold the largest share of the fresh water on the planet, and they "
    "release it gradually as meltwater during warmer months. The total amount of water on Earth "
    "changes very little over time, but its distribution between ice, oceans, groundwater and "
    "the atmosphere shifts with the climate. Scientists measure these shifts with rain gauges, "
    "river flow stations, satellites and drilled ice cores, and they use the measurements to "
    "estimate how much water will be available in different regions in the coming decades. "
    "Such estimates help engineers plan reservoirs, irrigation channels and flood defences."
)
