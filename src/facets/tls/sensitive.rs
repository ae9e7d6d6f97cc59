use std::fmt;

/// Secret material (a private key, a password): usable through `expose`, never printed.
///
/// Debug and Display print `<redacted>`, so a key cannot reach a log line, an event or an error
/// message by way of `{:?}` on a struct that holds it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Sensitive<T>(T);

impl<T> Sensitive<T> {
    pub fn new(value: T) -> Self {
        Self(value)
    }

    /// The secret itself; every call site is a place where material leaves the wrapper.
    pub fn expose(&self) -> &T {
        &self.0
    }

    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> From<T> for Sensitive<T> {
    fn from(value: T) -> Self {
        Self(value)
    }
}

impl<T> fmt::Debug for Sensitive<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl<T> fmt::Display for Sensitive<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    #[allow(dead_code)]
    struct Holder {
        name: &'static str,
        password: Sensitive<String>,
    }

    #[test]
    fn debug_and_display_never_show_the_value() {
        let holder = Holder {
            name: "kafka",
            password: Sensitive::new("hunter2-very-secret".to_string()),
        };
        let debug = format!("{holder:?} {holder:#?}");
        assert!(debug.contains("kafka"));
        assert!(debug.contains("<redacted>"));
        assert!(!debug.contains("hunter2"));
        assert_eq!(holder.password.to_string(), "<redacted>");
        assert_eq!(holder.password.expose(), "hunter2-very-secret");
    }
}
