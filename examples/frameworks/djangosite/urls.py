from django.urls import path

from . import views

urlpatterns = [
    path("reports/<str:customer>", views.report),
    path("reports/<str:customer>/mail", views.mail_report),
]
