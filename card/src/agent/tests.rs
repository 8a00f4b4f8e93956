//! Unit tests of the agent against an in-memory flash and a scripted master.
