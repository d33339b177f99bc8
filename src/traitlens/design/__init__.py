"""The stage framework every design is written in.

A design is a :class:`~traitlens.design.stages.Plan` of keyed stages
(:mod:`traitlens.design.stages`), and an evaluation is a set of measured rows, each keyed
by its inputs and reused only while they are unchanged (:mod:`traitlens.design.rows`).
The persona design (:mod:`traitlens.study.persona`), the concept design
(:mod:`traitlens.concepts`) and the sweep build on it."""
