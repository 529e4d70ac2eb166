//! The console's one stylesheet and one script, vendored into the binary (`include_str!`), so
//! the console works offline and loads nothing from elsewhere. Each is served under a URL that
//! carries a hash of its content (`/console/static/console.<hash>.css`), so it can be cached
//! for a year: a new build with other content has another URL.

use super::ConsoleError;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use std::sync::LazyLock;

/// One vendored file.
pub struct Asset {
    /// The content.
    pub body: &'static str,
    /// Its MIME type.
    pub content_type: &'static str,
    url: String,
}

impl Asset {
    fn new(stem: &str, extension: &str, body: &'static str, content_type: &'static str) -> Self {
        let digest = Sha256::digest(body.as_bytes());
        let url = format!(
            "/console/static/{stem}.{}.{extension}",
            hex::encode(&digest[..8])
        );
        Self {
            body,
            content_type,
            url,
        }
    }

    /// The content-hashed URL to link to.
    pub fn url(&'static self) -> &'static str {
        &self.url
    }
}

/// The stylesheet.
pub static CSS: LazyLock<Asset> = LazyLock::new(|| {
    Asset::new(
        "console",
        "css",
        include_str!("static/console.css"),
        "text/css; charset=utf-8",
    )
});

/// The script (progress polling, small conveniences; every page works without it).
pub static JS: LazyLock<Asset> = LazyLock::new(|| {
    Asset::new(
        "console",
        "js",
        include_str!("static/console.js"),
        "text/javascript; charset=utf-8",
    )
});

/// `GET /console/static/{file}`: a vendored file, cached for a year (its URL changes with it).
pub async fn serve(Path(file): Path<String>) -> Response {
    let path = format!("/console/static/{file}");
    let Some(asset) = [&*CSS, &*JS].into_iter().find(|a| a.url == path) else {
        return ConsoleError::new(StatusCode::NOT_FOUND, "no such file").into_response();
    };
    let mut response = asset.body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_carry_a_content_hash() {
        assert!(CSS.url().starts_with("/console/static/console."));
        assert!(CSS.url().ends_with(".css"));
        assert!(JS.url().ends_with(".js"));
        assert_eq!(CSS.url().len(), "/console/static/console.".len() + 16 + 4);
        assert_ne!(CSS.url(), JS.url());
    }

    #[tokio::test]
    async fn only_the_vendored_files_are_served() {
        let file = CSS.url().trim_start_matches("/console/static/").to_owned();
        let ok = serve(Path(file)).await;
        assert_eq!(ok.status(), StatusCode::OK);
        assert_eq!(
            ok.headers()[header::CACHE_CONTROL],
            "public, max-age=31536000, immutable"
        );
        let stale = serve(Path("console.0000000000000000.css".into())).await;
        assert_eq!(stale.status(), StatusCode::NOT_FOUND);
        let escape = serve(Path("../../Cargo.toml".into())).await;
        assert_eq!(escape.status(), StatusCode::NOT_FOUND);
    }
}
