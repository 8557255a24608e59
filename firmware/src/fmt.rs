//! Logging shim: defmt's macros with the `defmt` feature, no-ops without.
//!
//! Host builds and tests link without a defmt global logger, so the library
//! logs only through these macros (the shape of embassy-net's `fmt.rs`). The
//! no-op forms still borrow their arguments, so a variable used only in a log
//! line is not reported unused. Format strings use `{}` only, which both
//! sides understand.
#![allow(unused_macros)]

macro_rules! debug {
    ($s:literal $(, $x:expr)* $(,)?) => {{
        #[cfg(feature = "defmt")]
        ::defmt::debug!($s $(, $x)*);
        #[cfg(not(feature = "defmt"))]
        let _ = ($(&$x),*);
    }};
}

macro_rules! info {
    ($s:literal $(, $x:expr)* $(,)?) => {{
        #[cfg(feature = "defmt")]
        ::defmt::info!($s $(, $x)*);
        #[cfg(not(feature = "defmt"))]
        let _ = ($(&$x),*);
    }};
}

macro_rules! warn {
    ($s:literal $(, $x:expr)* $(,)?) => {{
        #[cfg(feature = "defmt")]
        ::defmt::warn!($s $(, $x)*);
        #[cfg(not(feature = "defmt"))]
        let _ = ($(&$x),*);
    }};
}
