"""Capabilities: what a unit can do, the vocabulary shared by units, mutual aid and response plans."""

from __future__ import annotations

from enum import StrEnum


class Capability(StrEnum):
    ENGINE = "ENGINE"  # pumper: water, hose, a fire crew
    LADDER = "LADDER"  # aerial ladder or platform
    RESCUE = "RESCUE"  # heavy or technical rescue (extrication, water)
    TANKER = "TANKER"  # water supply where hydrants are scarce
    HAZMAT = "HAZMAT"  # hazardous materials team
    COMMAND = "COMMAND"  # chief officer / incident command
    ALS = "ALS"  # advanced life support ambulance (paramedics)
    BLS = "BLS"  # basic life support ambulance
    PATROL = "PATROL"  # police patrol
    UTILITY = "UTILITY"  # utility crew (gas, power, water)
