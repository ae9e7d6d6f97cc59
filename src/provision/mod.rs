//! What the Jobs run inside the cluster (`bulwark provision ...`): apply a plan the operator
//! computed to a system outside Kubernetes. The only I/O here is to that system.

pub mod kafka;
pub mod postgres;

/// A Job's inputs as its environment gives them: a value inline or in a mounted file, required
/// values, an optional file. Errors name the variable and the path, never a value.
pub struct JobEnv<F>(pub F);

impl<F: Fn(&str) -> Option<String>> JobEnv<F> {
    fn get(&self, key: &str) -> Option<String> {
        (self.0)(key).filter(|v| !v.is_empty())
    }

    /// The value of `inline`, else the content of the file `file` names.
    pub fn inline_or_file(&self, inline: &str, file: &str) -> Result<String, String> {
        if let Some(v) = self.get(inline) {
            return Ok(v);
        }
        let path = self
            .get(file)
            .ok_or_else(|| format!("set {file} (or {inline})"))?;
        std::fs::read_to_string(&path).map_err(|e| format!("{file}={path}: {e}"))
    }

    /// A JSON input, inline or in a file; an error names `what` and serde_json's position, never
    /// the content.
    pub fn json<T: serde::de::DeserializeOwned>(
        &self,
        inline: &str,
        file: &str,
        what: &str,
    ) -> Result<T, String> {
        let text = self.inline_or_file(inline, file)?;
        serde_json::from_str(&text).map_err(|e| format!("{what}: {e}"))
    }

    pub fn required(&self, key: &str) -> Result<String, String> {
        self.get(key).ok_or_else(|| format!("{key} is not set"))
    }

    /// The content of the file `key` names, when it is set.
    pub fn optional_file(&self, key: &str) -> Result<Option<String>, String> {
        self.get(key)
            .map(|path| std::fs::read_to_string(&path).map_err(|e| format!("{key}={path}: {e}")))
            .transpose()
    }
}
