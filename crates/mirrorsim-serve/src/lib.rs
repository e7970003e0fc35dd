//! mirrorsim-serve: HTTP services over mirrorsim's engine (being written).
