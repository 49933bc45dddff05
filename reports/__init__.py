"""The run's report: exploration data for each group (explore), static figures (figures), interactive
views (interactive) and the self-contained HTML page that holds them (html)."""
