//! Value parsers that refuse what the worker cannot run with, so a bad flag is a clear message
//! at start instead of a value quietly changed.

use std::str::FromStr;

use clap::builder::TypedValueParser;

/// An integer flag of at least `min`.
pub fn at_least<T>(min: T) -> impl TypedValueParser<Value = T>
where
    T: FromStr + PartialOrd + std::fmt::Display + Copy + Send + Sync + 'static,
    <T as FromStr>::Err: std::fmt::Display,
{
    move |text: &str| -> Result<T, String> {
        match text.parse::<T>() {
            Ok(value) if value >= min => Ok(value),
            Ok(_) => Err(format!("must be at least {min}")),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// A rate in requests per second: a finite number above zero.
#[cfg(feature = "tools")]
pub fn positive_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        Ok(_) => Err("must be a number above 0".into()),
        Err(e) => Err(e.to_string()),
    }
}
